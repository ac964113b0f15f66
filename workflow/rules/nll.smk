rule nll:
    """Bits/dim of a fixed subset of the held-out split under one checkpoint (probability-flow ODE)."""
    input:
        checkpoint=out(layout.CHECKPOINT),
        data=out(layout.DATA, split=HELD_OUT),
    output:
        out(layout.NLL),
    params:
        n=config["nll"].get("n_images", 0),
        probes=config["nll"]["probes"],
        estimator=config["nll"]["estimator"],
        rtol=config["nll"]["rtol"],
        atol=config["nll"]["atol"],
        config_hash=lambda w: specs.model_hash(config, w.train),
    benchmark:
        bench("nll", "{train}-{step}")
    log:
        log("nll", "{train}-{step}"),
    threads: res("nll")["cpus"]
    resources:
        **gpu_resources("nll",
            batch_size=config["nll"]["batch_size"],
            max_nfe=config["nll"]["max_nfe"],
            device=config["nll"]["device"]),
    conda:
        ENV
    shell:
        "python -m ied nll --checkpoint {input.checkpoint:q} --data {input.data:q} --n-images {params.n}"
        " --probes {params.probes} --estimator {params.estimator} --rtol {params.rtol} --atol {params.atol}"
        " --expect-step {wildcards.step} --expect-config-hash {params.config_hash}"
        " --batch-size {resources.batch_size} --max-nfe {resources.max_nfe} --device {resources.device} --out {output:q}"
        " > {log:q} 2>&1"
