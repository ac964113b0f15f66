rule generate:
    """Sample one checkpoint with one schedule, sampler and seed set; shards make a killed job resumable."""
    input:
        checkpoint=out(layout.CHECKPOINT),
        fitted=fitted_table,
    output:
        samples=out(layout.SAMPLES),
        grid=out(layout.GRID),
    params:
        spec=lambda w: dumps(specs.sampling_spec(config, w.sample, w.sampler)),
        # the checkpoint must hold this step of this training spec (a copied file is refused)
        config_hash=lambda w: specs.model_hash(config, w.train),
    benchmark:
        bench("generate", CELL_JOB)
    log:
        jsonl=log("generate", CELL_JOB, "jsonl"),
        stderr=log("generate", CELL_JOB),
    threads: res("generate")["cpus"]
    resources:
        **gpu_resources("generate",
            batch_size=config["sample"]["batch_size"],
            shard_size=config["sample"]["shard_size"],
            device=config["sample"]["device"],
            precision=config["sample"]["precision"],
            compile=int(config["sample"]["compile"])),
    conda:
        ENV
    shell:
        "python -m ied generate --checkpoint {input.checkpoint:q} --rationale-table={input.fitted:q}"
        " --spec {params.spec:q} --n-samples {wildcards.n}"
        " --seed-set {wildcards.seed} --expect-step {wildcards.step} --expect-config-hash {params.config_hash}"
        " --batch-size {resources.batch_size} --shard-size {resources.shard_size} --device {resources.device}"
        " --precision {resources.precision} --compile {resources.compile}"
        " --out {output.samples:q} --grid {output.grid:q} --log-file {log.jsonl:q} 2> {log.stderr:q}"
