rule tabulate_schedule:
    """σ(t), φ and Φ of one rationale on a t grid (Algorithm 1 where no closed form exists)."""
    output:
        f"{EXP}/schedules/{{rationale}}.parquet",
    params:
        rationales=lambda w: dumps(RATIONALES),
    benchmark:
        f"{EXP}/benchmarks/tabulate_schedule/{{rationale}}.tsv",
    log:
        f"{LOGS}/tabulate_schedule/{{rationale}}.log",
    conda:
        ENV
    shell:
        "python -m ied tabulate --rationales {params.rationales:q} --name {wildcards.rationale} --out {output} > {log} 2>&1"
