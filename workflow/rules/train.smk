# Run-time settings of a training job: resources, which no rerun trigger watches.
TRAINING_RUNTIME = dict(log_every=config["train"]["log_every"], device=config["train"]["device"],
                        precision=config["train"]["precision"], compile=int(config["train"]["compile"]))


rule train_segment:
    """Train one segment (checkpoint_every steps), resuming from the previous segment's checkpoint."""
    wildcard_constraints:
        train=names_pattern(m for m in layout.trained_models(config) if m not in ADAPTIVE),
    input:
        data=out(layout.DATA, split="train"),
        resume=previous_checkpoint,
    output:
        checkpoint=out(layout.CHECKPOINT),
        loss=out(layout.LOSS),
    params:
        spec=lambda w: dumps(specs.training_spec(config, w.train)),
        start=lambda w: int(w.step) - EVERY,
        resume=lambda w, input: f"--resume {shlex.quote(input.resume[0])}" if input.resume else "",
    benchmark:
        bench("train_segment", "{train}-{step}")
    log:
        jsonl=log("train_segment", "{train}-{step}", "jsonl"),
        stderr=log("train_segment", "{train}-{step}"),
    threads: res("train_segment")["cpus"]
    resources:
        **gpu_resources("train_segment", **TRAINING_RUNTIME, density_table=""),
    conda:
        ENV
    shell:
        # --gpus > 1: one rank per GPU of this node (ied.distributed.launch, torchrun)
        "python -m ied train --gpus {resources.gpu} --spec {params.spec:q} --data {input.data:q} --from-step {params.start}"
        " --to-step {wildcards.step}"
        " {params.resume} --out {output.checkpoint:q} --loss-table {output.loss:q} --log-file {log.jsonl:q}"
        " --log-every {resources.log_every} --density-table={resources.density_table:q}"
        " --device {resources.device} --precision {resources.precision} --compile {resources.compile}"
        " 2> {log.stderr:q}"


use rule train_segment as train_adaptive_segment with:
    # The same job for an adaptive training rationale (ied.adaptive), which also writes its learned density; its
    # cluster resources are train_segment's.
    wildcard_constraints:
        train=names_pattern(ADAPTIVE),
    output:
        checkpoint=out(layout.CHECKPOINT),
        loss=out(layout.LOSS),
        density=out(layout.DENSITY),
    benchmark:
        bench("train_segment", "{train}-{step}")
    resources:
        **gpu_resources("train_segment", **TRAINING_RUNTIME, density_table=lambda w: out(layout.DENSITY, **w)),


rule import_network:
    """A published network (`pretrained:`) as a checkpoint of this project, read without running its pickle's code."""
    wildcard_constraints:
        train=names_pattern(layout.pretrained_models(config)),
        step=str(layout.PRETRAINED_STEP),
    output:
        out(layout.CHECKPOINT),
    params:
        # the file's content is the model's identity; its path is a resource (moving the file reruns nothing)
        sha256=lambda w: specs.pretrained_spec(config, w.train)["sha256"],
        shape=IMAGE_SHAPE,
        classes=DATASET.num_classes,
    resources:
        path=lambda w: config["pretrained"][w.train]["path"],
    benchmark:
        bench("import_network", "{train}-{step}")
    log:
        log("import_network", "{train}-{step}"),
    conda:
        ENV
    shell:
        "python -m ied import-edm {resources.path:q} --out {output:q} --step {wildcards.step}"
        " --expect-sha256 {params.sha256} --expect-shape {params.shape} --expect-classes {params.classes}"
        " > {log:q} 2>&1"
