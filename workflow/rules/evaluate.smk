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
        " --cache-root {resources.cache:q}"
        " --batch-size {resources.batch_size} --device {resources.device} --out {output:q} > {log:q} 2>&1"


rule aggregate:
    """Every metrics row in one table."""
    input:
        cell_paths(layout.METRIC_ROW),
    output:
        out(layout.METRICS),
    benchmark:
        bench("aggregate", "aggregate")
    log:
        log("aggregate", "aggregate"),
    conda:
        ENV
    shell:
        "python -m ied aggregate --out {output:q} {input:q} > {log:q} 2>&1"
