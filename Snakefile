"""hessvalley: SGD noise and the Hessian of the loss (Wei & Schwab; Sagun et al.; Xing et al.).

Run everything on the embedded default with `snakemake --cores all`; target one figure with
`snakemake --cores all results/figures/<id>.pdf`. See README.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a --configfile is given: Snakemake would otherwise merge the two
# (the default's runs would join the paper's).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/project.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/equilibrium.smk"
include: "workflow/rules/alignment.smk"
include: "workflow/rules/fdr.smk"
include: "workflow/rules/outliers.smk"
include: "workflow/rules/width.smk"
include: "workflow/rules/line.smk"
include: "workflow/rules/xing_batch.smk"
include: "workflow/rules/toy.smk"
# Xing et al. 2018 §3 (Figs 1-4, Table 1)
include: "workflow/rules/barriers.smk"
include: "workflow/rules/claims.smk"


rule all:
    default_target: True
    input:
        all_targets(),
