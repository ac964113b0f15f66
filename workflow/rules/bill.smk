# The bill (ied.cost) of what this invocation runs, from the DAG Snakemake built for it (its targets and forced
# reruns): one line once the DAG is known, dry runs included, and the budget applied just before the first job of
# a run. A command that runs no job (--unlock, --lint, --list-rules, --dag, --report, --touch) is never refused.
import logging

from snakemake.common import NOTHING_TO_BE_DONE_MSG
from snakemake.logging import logger
from snakemake_interface_logger_plugins.common import LogEvent


class Bill(logging.Handler):
    """Bills the DAG when Snakemake reports it built: its job stats (LogEvent.RUN_INFO) or "nothing to be done"."""

    rows = None

    def emit(self, record):
        if self.rows is not None or not (getattr(record, "event", None) == LogEvent.RUN_INFO
                                         or record.msg == NOTHING_TO_BE_DONE_MSG):
            return
        self.rows = cost.preflight(config, THROUGHPUT, workflow.dag, os.environ.get(cost.BILL_OUT))


BILL = Bill()
THROUGHPUT = cost.configured_throughput(config)
if workflow.is_main_process:
    logger.addHandler(BILL)


onstart:
    if workflow.is_main_process and not workflow.touch and BILL.rows is not None:
        try:
            cost.check_budget(BILL.rows, config["budget"]["gpu_hours"], THROUGHPUT)
        except cost.CostError as err:
            sys.exit(f"Config error: {err}")
