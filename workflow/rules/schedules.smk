rule tabulate_schedule:
    """σ(t), φ and Φ of one rationale on a t grid (Algorithm 1 where no closed form exists)."""
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
