"""Sagun et al. 2017 §3.1, Table 1: outlier counts of the Hessian spectra of a family of runs
beside the data's PCA -> results/sagun2017/outliers.zarr, results/tables/sagun2017_table1.csv,
and the figure results/figures/sagun2017_outliers.pdf (+ .png, + the claim .json).
"""


rule outlier_table:
    input:
        unpack(lambda w: family_inputs("outliers")),
        src=stage_sources("outlier_table"),
    output:
        store=directory(f"{RESULTS}/sagun2017/outliers.zarr"),
        table=report(
            f"{RESULTS}/tables/sagun2017_table1.csv",
            caption="../report/sagun2017_table1.rst",
            category="Bulk and outliers",
        ),
    log:
        "logs/sagun2017/outlier_table.log",
    benchmark:
        "benchmarks/sagun2017/outlier_table.tsv"
    threads: 1
    resources:
        runtime=runtime("outlier_table"),
        mem_mb=mem_mb("outlier_table"),
    params:
        kwargs=lambda w: as_json({"outliers": section_spec("outliers")}),
        io=lambda w, input, output: as_json(
            {
                "spectra": list(input.spectra),
                "trajectories": list(input.trajectories),
                "datasets": list(input.datasets),
                "output": output.store,
                "table": output.table,
            }
        ),
    shell:
        hessvalley("outlier_table")


rule sagun2017_outliers:
    input:
        store=f"{RESULTS}/sagun2017/outliers.zarr",
        src=stage_sources("sagun2017_outliers"),
    output:
        pdf=f"{FIGURES}/sagun2017_outliers.pdf",
        json=f"{FIGURES}/sagun2017_outliers.json",
        png=report(
            f"{FIGURES}/sagun2017_outliers.png",
            caption="../report/sagun2017_outliers.rst",
            category="Bulk and outliers",
        ),
    log:
        "logs/figures/sagun2017_outliers.log",
    benchmark:
        "benchmarks/figures/sagun2017_outliers.tsv"
    threads: 1
    resources:
        runtime=runtime("sagun2017_outliers"),
        mem_mb=mem_mb("sagun2017_outliers"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {"table_store": input.store, "output": output.pdf}
        ),
    shell:
        hessvalley("sagun2017_outliers")


targets(lambda: section_targets("outliers", "sagun2017_outliers"))
