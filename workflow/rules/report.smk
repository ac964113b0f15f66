rule tables:
    """Tables 1–4: best FID with IS per training × sampling rationale; FID mean ± std over seed sets."""
    input:
        f"{EXP}/metrics.parquet",
    output:
        [report(t, category="Tables") if t.endswith(".md") else t for t in TABLES],
    params:
        config=lambda w: dumps(config),
        outdir=lambda w, output: parent(output[0]),
    benchmark:
        f"{EXP}/benchmarks/tables/tables.tsv",
    log:
        f"{LOGS}/tables/tables.log",
    conda:
        ENV
    shell:
        "python -m ied tables --metrics {input} --config {params.config:q} --outdir {params.outdir} > {log} 2>&1"


rule figures:
    """Figures 1–9 and the comparison with the paper's published numbers."""
    input:
        metrics=f"{EXP}/metrics.parquet",
        schedules=[f"{EXP}/schedules/{name}.parquet" for name in RATIONALES],
        grids=cell_path("grids", "png"),
        paper=[config["paper_results"]] if config.get("paper_results") else [],
    output:
        [report(f, category="Figures") if f.endswith(".png") else f for f in FIGURES],
    params:
        config=lambda w: dumps(config),
        outdir=lambda w, output: parent(output[0]),
        # grids/<train>/<step>/<sample>/<sampler>/seed<k>.png → grids/ (their common path is too deep with one
        # training rationale)
        grids=lambda w, input: Path(input.grids[0]).parents[4],
        paper=lambda w, input: f"--paper {input.paper}" if input.paper else "",
    benchmark:
        f"{EXP}/benchmarks/figures/figures.tsv",
    log:
        f"{LOGS}/figures/figures.log",
    conda:
        ENV
    shell:
        "python -m ied figures --metrics {input.metrics} --config {params.config:q} --schedules {input.schedules}"
        " --grids {params.grids} --outdir {params.outdir} {params.paper} > {log} 2>&1"


rule report:
    input:
        tables=TABLES,
        figures=FIGURES,
    output:
        REPORT,
    benchmark:
        f"{EXP}/benchmarks/report/report.tsv",
    log:
        f"{LOGS}/report/report.log",
    conda:
        ENV
    shell:
        "python -m ied report --tables {input.tables} --figures {input.figures} --out {output} > {log} 2>&1"
