rule generate:
    """Sample one checkpoint with one schedule, sampler and seed set; shards make a killed job resumable."""
    input:
        f"{EXP}/checkpoints/{{train}}/ckpt-{{step}}.pt",
    output:
        samples=f"{EXP}/samples/{CELL}.npz",
        grid=f"{EXP}/grids/{CELL}.png",
    params:
        rationale=lambda w: dumps(RATIONALES[w.sample]),
        sampler=lambda w: sampler_entry(w)["sampler"],
        steps=lambda w: sampler_entry(w)["steps"],
        options=lambda w: dumps(sampler_entry(w).get("options", {})),
        n=config["sample"]["n_samples"],
        batch=config["sample"]["batch_size"],
        shard=config["sample"]["shard_size"],
    benchmark:
        f"{EXP}/benchmarks/generate/{LOG_CELL}.tsv",
    log:
        jsonl=f"{LOGS}/generate/{LOG_CELL}.jsonl",
        stderr=f"{LOGS}/generate/{LOG_CELL}.log",
    threads: res("generate", "cpus", 1)
    resources:
        gpu=res("generate", "gpus", 0),
        gpu_model=res("generate", "gpu_model", None),
        mem_mb=res("generate", "mem_mb", 4000),
        runtime=res("generate", "runtime", 60),
        cpus_per_task=res("generate", "cpus", 1),
    conda:
        ENV
    shell:
        "python -m ied generate --checkpoint {input} --rationale {params.rationale:q} --sampler {params.sampler}"
        " --steps {params.steps} --options {params.options:q} --n-samples {params.n} --seed-set {wildcards.seed}"
        " --batch-size {params.batch} --shard-size {params.shard} --out {output.samples} --grid {output.grid} --log {log.jsonl} 2> {log.stderr}"
