rule tabulate_schedule:
    """σ(t), φ and Φ of one rationale on a t grid (Algorithm 1 where no closed form exists)."""
    wildcard_constraints:
        rationale=names_pattern(n for n in RATIONALES if layout.tabulated(RATIONALES[n])),
    output:
        out(layout.SCHEDULE),
    params:
        spec=lambda w: dumps(RATIONALES[w.rationale]),
    benchmark:
        bench("tabulate_schedule", "{rationale}")
    log:
        log("tabulate_schedule", "{rationale}"),
    conda:
        ENV
    shell:
        "python -m ied tabulate --spec {params.spec:q} --name {wildcards.rationale} --out {output:q} > {log:q} 2>&1"


rule teacher:
    """A fit's teacher trajectory (ied.fitting): one per model, checkpoint, base and pilot, read by every fit of them."""
    wildcard_constraints:
        teacher=r"p\d+-[0-9a-f]{16}",
    input:
        out(layout.CHECKPOINT),
    output:
        out(layout.TEACHER),
    params:
        spec=lambda w: dumps({k: v for k, v in TEACHERS[layout.TEACHER.format(**w)].items() if k in ("base", "pilot")}),
        # the checkpoint must hold this step of this model's training spec (or its pretrained file)
        config_hash=lambda w: specs.model_hash(config, w.train),
    benchmark:
        bench("teacher", "{train}-{step}-{teacher}")
    log:
        jsonl=log("teacher", "{train}-{step}-{teacher}", "jsonl"),
        stderr=log("teacher", "{train}-{step}-{teacher}"),
    threads: res("teacher")["cpus"]
    resources:
        **gpu_resources("teacher", device=config["sample"]["device"]),
    conda:
        ENV
    shell:
        "python -m ied teacher --checkpoint {input:q} --spec {params.spec:q} --expect-step {wildcards.step}"
        " --expect-config-hash {params.config_hash} --device {resources.device} --out {output:q}"
        " --log-file {log.jsonl:q} 2> {log.stderr:q}"


rule fit_rationale:
    """A rationale fitted to a model's checkpoint (ied.fitting): its schedule table, the fitted knots in the metadata."""
    wildcard_constraints:
        rationale=names_pattern(FITTED),
    input:
        checkpoint=lambda w: out(layout.CHECKPOINT, train=FITTED[w.rationale]["model"], step=FITTED[w.rationale]["step"]),
        teacher=lambda w: out(layout.teacher_path(FITTED[w.rationale])),
    output:
        out(layout.SCHEDULE),
    params:
        spec=lambda w: dumps(FITTED[w.rationale]),
        # the checkpoint must hold this step of this model's training spec (or its pretrained file)
        config_hash=lambda w: specs.model_hash(config, FITTED[w.rationale]["model"]),
        step=lambda w: FITTED[w.rationale]["step"],
    benchmark:
        bench("fit_rationale", "{rationale}")
    log:
        jsonl=log("fit_rationale", "{rationale}", "jsonl"),
        stderr=log("fit_rationale", "{rationale}"),
    threads: res("fit_rationale")["cpus"]
    resources:
        **gpu_resources("fit_rationale", device=config["sample"]["device"]),
    conda:
        ENV
    shell:
        "python -m ied fit-rationale --checkpoint {input.checkpoint:q} --teacher {input.teacher:q}"
        " --spec {params.spec:q} --name {wildcards.rationale}"
        " --expect-step {params.step} --expect-config-hash {params.config_hash} --device {resources.device}"
        " --out {output:q} --log-file {log.jsonl:q} 2> {log.stderr:q}"


rule learned_rationale:
    """An adaptive model's learned density at a checkpoint (ied.adaptive): its schedule table, the bins in the metadata."""
    wildcard_constraints:
        rationale=names_pattern(LEARNED),
    input:
        lambda w: out(layout.DENSITY, train=LEARNED[w.rationale]["model"], step=LEARNED[w.rationale]["step"]),
    output:
        out(layout.SCHEDULE),
    params:
        spec=lambda w: dumps(LEARNED[w.rationale]),
    benchmark:
        bench("learned_rationale", "{rationale}")
    log:
        log("learned_rationale", "{rationale}"),
    conda:
        ENV
    shell:
        "python -m ied learn-rationale --density {input:q} --spec {params.spec:q} --name {wildcards.rationale}"
        " --out {output:q} > {log:q} 2>&1"
