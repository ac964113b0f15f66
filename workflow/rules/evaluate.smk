rule evaluate:
    """FID, IS and KID of one samples file (torch-fidelity) → one Parquet row."""
    input:
        samples=f"{EXP}/samples/{CELL}.npz",
        reference=f"{EXP}/data/{REFERENCE}.npz",
        weights=extractor_weights,
    output:
        f"{EXP}/metrics/rows/{CELL}.parquet",
    params:
        meta=lambda w: dumps(
            {
                "experiment": config["experiment"],
                "dataset": config["dataset"]["name"],
                "train_rationale": w.train,
                "sample_rationale": w.sample,
                "sampler_name": w.sampler,
                "train_label": RATIONALES[w.train].get("label", w.train),
                "sample_label": RATIONALES[w.sample].get("label", w.sample),
            }
        ),
        extractor=EXTRACTOR,
        cache=f"{EXP}/evaluator/fidelity-cache",
    benchmark:
        f"{EXP}/benchmarks/evaluate/{LOG_CELL}.tsv",
    log:
        f"{LOGS}/evaluate/{LOG_CELL}.log",
    threads: res("evaluate", "cpus", 1)
    resources:
        gpu=res("evaluate", "gpus", 0),
        gpu_model=res("evaluate", "gpu_model", None),
        mem_mb=res("evaluate", "mem_mb", 4000),
        runtime=res("evaluate", "runtime", 30),
        cpus_per_task=res("evaluate", "cpus", 1),
    conda:
        ENV
    shell:
        "python -m ied evaluate --samples {input.samples} --reference {input.reference} --extractor {params.extractor}"
        " --weights {input.weights} --meta {params.meta:q} --cache-root {params.cache} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        METRIC_ROWS,
    output:
        f"{EXP}/metrics.parquet",
    benchmark:
        f"{EXP}/benchmarks/aggregate/aggregate.tsv",
    log:
        f"{LOGS}/aggregate/aggregate.log",
    conda:
        ENV
    shell:
        "python -m ied aggregate --out {output} {input} > {log} 2>&1"
