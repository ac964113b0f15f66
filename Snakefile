# Inverse Engineering Diffusion: data → schedules → training per rationale → sampling with every
# schedule and sampler → FID/IS/KID → tables, figures, report. See README.md and config/README.md.
from snakemake.utils import min_version

min_version("8.20")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/schedules.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/nll.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bill.smk"


rule all:
    # every table and figure itself, not only the report: a killed tables or figures job loses its outputs, and
    # the rerun must make them (and then the report) again
    input:
        [out(t) for t in layout.tables(config)],
        [out(f) for f in layout.figures(config)],
        out(layout.REPORT),
    default_target: True
