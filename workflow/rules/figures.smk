"""Figures -> results/figures/<id>.pdf + .png."""


rule training_figure:
    input:
        trajectories=lambda w: trajectories(w.setting),
        src=stage_sources("training_figure"),
    output:
        pdf=f"{FIGURES}/{{setting}}_training.pdf",
        png=report(
            f"{FIGURES}/{{setting}}_training.png",
            caption="../report/training.rst",
            category="Training",
            subcategory="{setting}",
        ),
    log:
        "logs/figures/{setting}_training.log",
    benchmark:
        "benchmarks/figures/{setting}_training.tsv"
    threads: 1
    resources:
        runtime=runtime("training_figure"),
        mem_mb=mem_mb("training_figure"),
    params:
        kwargs=lambda w: as_json(
            {
                "setting": w.setting,
                "figures": {
                    k: config["figures"][k]
                    for k in ("dpi", "band", "training_log_scale")
                },
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectories": list(input.trajectories), "output": output.pdf}
        ),
    shell:
        hessvalley("training_figure")


targets(training_targets)
