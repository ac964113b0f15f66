rule evaluate:
    """FID, IS, KID, precision and recall of one samples file (ied.fidelity) → one Parquet row."""
    input:
        samples=out(layout.SAMPLES),
        reference=[out(layout.DATA, split=REFERENCE)] if REFERENCE else [],
        weights=extractor_weights,
    output:
        out(layout.METRIC_ROW),
    params:
        cell=lambda w: dumps({"train_rationale": w.train, "sample_rationale": w.sample, "sampler_name": w.sampler}),
        extractor=EXTRACTOR,
        weights_sha256=WEIGHTS_SHA256,
        # published reference statistics enter by their content, like the weights
        statistics_sha256=STATISTICS_SHA256,
        # the intervals' resamples, when asked for (0: rows as before the intervals existed, so their identity too)
        **({"bootstrap": BOOTSTRAP} if BOOTSTRAP else {}),
        reference=lambda w, input: f"--reference {shlex.quote(input.reference[0])}" if input.reference else "",
        shape=IMAGE_SHAPE,
    benchmark:
        bench("evaluate", CELL_JOB)
    log:
        log("evaluate", CELL_JOB),
    threads: res("evaluate")["cpus"]
    resources:
        **gpu_resources("evaluate",
            batch_size=config["evaluate"]["batch_size"],
            device=config["evaluate"]["device"],
            cache=out(layout.FIDELITY_CACHE),
            weights=WEIGHTS or out(layout.EVALUATOR),
            statistics=STATISTICS or ""),
    conda:
        ENV
    shell:
        "python -m ied evaluate --samples {input.samples:q} {params.reference}"
        " --reference-statistics={resources.statistics:q} --expect-shape {params.shape} --extractor {params.extractor}"
        " --weights {resources.weights:q} --sha256={params.weights_sha256:q} --cell {params.cell:q}"
        f" --cache-root {{resources.cache:q}} --bootstrap {BOOTSTRAP}"
        " --batch-size {resources.batch_size} --device {resources.device} --out {output:q} > {log:q} 2>&1"


rule reference:
    """The probability-flow solution of a set's first images under a checkpoint (ied.reference), and its own error."""
    input:
        out(layout.CHECKPOINT),
    output:
        out(layout.REFERENCE),
    params:
        spec=lambda w: dumps(REFERENCES[layout.REFERENCE.format(**w)]),
        config_hash=lambda w: specs.model_hash(config, w.train),
    benchmark:
        bench("reference", "{train}-{step}-{domain}-n{n}-seed{seed}")
    log:
        log("reference", "{train}-{step}-{domain}-n{n}-seed{seed}"),
    threads: res("reference")["cpus"]
    resources:
        **gpu_resources("reference", batch_size=config["sample"]["batch_size"], device=config["sample"]["device"]),
    conda:
        ENV
    shell:
        "python -m ied reference --checkpoint {input:q} --spec {params.spec:q} --expect-step {wildcards.step}"
        " --expect-config-hash {params.config_hash} --batch-size {resources.batch_size} --device {resources.device}"
        " --out {output:q} > {log:q} 2>&1"


rule distance:
    """The deterministic cells a reference serves, their first images against it (ied.reference) → a row per cell."""
    input:
        checkpoint=out(layout.CHECKPOINT),
        reference=out(layout.REFERENCE),
        tables=lambda w: [out(layout.SCHEDULE, rationale=s) for s in distance_tables(w)],
    output:
        out(layout.DISTANCE),
    params:
        cells=lambda w: dumps([{"cell": {"train_rationale": c.train, "sample_rationale": c.sample,
                                         "sampler_name": c.sampler},
                                "spec": specs.sampling_spec(config, c.sample, c.sampler)}
                               for c in DISTANCES[layout.DISTANCE.format(**w)]]),
        tables=lambda w: " ".join(shlex.quote(f"{s}={out(layout.SCHEDULE, rationale=s)}") for s in distance_tables(w)),
        config_hash=lambda w: specs.model_hash(config, w.train),
    benchmark:
        bench("distance", "{train}-{step}-{domain}-n{n}-seed{seed}")
    log:
        log("distance", "{train}-{step}-{domain}-n{n}-seed{seed}"),
    threads: res("distance")["cpus"]
    resources:
        **gpu_resources("distance",
            batch_size=config["sample"]["batch_size"],
            device=config["sample"]["device"],
            precision=config["sample"]["precision"]),
    conda:
        ENV
    shell:
        "python -m ied distance --checkpoint {input.checkpoint:q} --reference {input.reference:q}"
        " --cells {params.cells:q} --tables {params.tables} --n-samples {wildcards.n} --seed-set {wildcards.seed}"
        " --expect-step {wildcards.step} --expect-config-hash {params.config_hash}"
        " --batch-size {resources.batch_size} --device {resources.device} --precision {resources.precision}"
        " --out {output:q} > {log:q} 2>&1"


rule aggregate:
    """Every metrics row in one table, with each deterministic cell's distance from the probability-flow solution."""
    input:
        rows=cell_paths(layout.METRIC_ROW),
        distances=[out(path) for path in DISTANCES],
    output:
        out(layout.METRICS),
    benchmark:
        bench("aggregate", "aggregate")
    log:
        log("aggregate", "aggregate"),
    conda:
        ENV
    shell:
        "python -m ied aggregate --out {output:q} --distances {input.distances:q} --rows {input.rows:q} > {log:q} 2>&1"
