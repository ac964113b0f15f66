rule tables:
    """Tables 1–4 by the paper's protocol, FID against NFE, NLL per training rationale."""
    input:
        metrics=out(layout.METRICS),
        nll=nll_tables(),
    output:
        [report(out(t), category="Tables", caption=caption(t)) if t.endswith(".md") else out(t)
         for t in layout.tables(config)],
    params:
        experiment=lambda w: dumps(layout.table_inputs(config)),
        outdir=lambda w, output: os.path.dirname(output[0]),
    benchmark:
        bench("tables", "tables")
    log:
        log("tables", "tables"),
    conda:
        ENV
    shell:
        "python -m ied tables --metrics {input.metrics:q} --nll {input.nll:q} --experiment {params.experiment:q}"
        " --outdir {params.outdir:q} > {log:q} 2>&1"


rule figures:
    """Figures 1–9 and the comparison with the paper's published numbers."""
    input:
        metrics=out(layout.METRICS),
        schedules=[out(layout.SCHEDULE, rationale=n) for n, spec in RATIONALES.items() if layout.has_schedule(spec)],
        densities=density_tables(),
        grids=cell_paths(layout.GRID),
        losses=loss_tables(),
        nll=nll_tables(),
    output:
        [report(out(f), category="Figures", caption=caption(f)) if f.endswith(".png") else out(f)
         for f in layout.figures(config)],
    params:
        experiment=lambda w: dumps(layout.figure_inputs(config)),
        root=lambda w, input: os.path.dirname(input.metrics),  # metrics.parquet lies in the experiment folder
        outdir=lambda w, output: os.path.dirname(output[0]),
    benchmark:
        bench("figures", "figures")
    log:
        log("figures", "figures"),
    conda:
        ENV
    shell:
        "python -m ied figures --metrics {input.metrics:q} --experiment {params.experiment:q} --schedules {input.schedules:q}"
        " --losses {input.losses:q} --densities {input.densities:q} --nll {input.nll:q} --root {params.root:q} --outdir {params.outdir:q}"
        " > {log:q} 2>&1"


rule report:
    """Tables and figures in one Markdown page."""
    input:
        tables=[out(t) for t in layout.tables(config)],
        figures=[out(f) for f in layout.figures(config)],
    output:
        out(layout.REPORT),
    benchmark:
        bench("report", "report")
    log:
        log("report", "report"),
    conda:
        ENV
    shell:
        "python -m ied report --tables {input.tables:q} --figures {input.figures:q} --out {output:q} > {log:q} 2>&1"
