rule train_segment:
    """Train one segment (checkpoint_every steps), resuming from the previous segment's checkpoint."""
    input:
        data=f"{EXP}/data/train.npz",
        resume=previous_checkpoint,
    output:
        f"{EXP}/checkpoints/{{train}}/ckpt-{{step}}.pt",
    params:
        config=lambda w: dumps(train_config(config, w.train)),
        start=lambda w: int(w.step) - EVERY,
        resume=lambda w, input: f"--resume {input.resume}" if input.resume else "",
    benchmark:
        f"{EXP}/benchmarks/train_segment/{{train}}-{{step}}.tsv",
    log:
        jsonl=f"{LOGS}/train_segment/{{train}}-{{step}}.jsonl",
        stderr=f"{LOGS}/train_segment/{{train}}-{{step}}.log",
    threads: res("train", "cpus", 1)
    resources:
        gpu=res("train", "gpus", 0),
        gpu_model=res("train", "gpu_model", None),
        mem_mb=res("train", "mem_mb", 4000),
        runtime=res("train", "runtime", 60),
        cpus_per_task=res("train", "cpus", 1),
    conda:
        ENV
    shell:
        "python -m ied train --config {params.config:q} --data {input.data} --start {params.start} --end {wildcards.step}"
        " {params.resume} --out {output} --log {log.jsonl} 2> {log.stderr}"
