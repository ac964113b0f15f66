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


rule all:
    # every table and figure itself, not only the report: a killed tables or figures job loses its outputs, and
    # the rerun must make them (and then the report) again
    input:
        [out(t) for t in layout.tables(config)],
        [out(f) for f in layout.figures(config)],
        out(layout.REPORT),
    default_target: True


# resources: is keyed by rule name; now that every rule is defined, an unknown key is refused.
try:
    check_resources(config, [r.name for r in workflow.rules])
except ConfigError as err:
    sys.exit(f"Config error: {err}")

# The bill (ied.cost) of the whole workflow: one line before any job, dry runs included, and the budget. Not in
# jobs re-entering the Snakefile on a cluster node, nor in the `snakemake --summary` that tells it what is done.
if workflow.is_main_process and not os.environ.get(cost.NO_BILL):
    try:
        budget = config["budget"]
        throughput = cost.read_throughput(budget["throughput"]) if budget["throughput"] else cost.PAPER_A100
        # nothing of this experiment is there yet: every job is to do, no need to ask Snakemake
        plan = cost.snakemake_plan(workflow.main_snakefile, os.getcwd(), workflow.overwrite_configfiles,
                                   workflow.config_settings.config_args or []) if Path(EXP).exists() else None
        bill = cost.bill(config, throughput, plan)
        print(cost.line(bill, throughput, config), file=sys.stderr)
        cost.check_budget(bill, budget["gpu_hours"], throughput)
    except cost.CostError as err:
        sys.exit(f"Config error: {err}")
