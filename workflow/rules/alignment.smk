"""W&S Fig 5 (A.4): cos(H, C) of the Hessian and the per-sample gradient covariance along
trajectories -> results/<setting>/seed<k>/alignment.zarr, and the figure
results/figures/wei2020_fig5.pdf (+ .png, + the claim .json).
"""


rule alignment:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("alignment"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/alignment.zarr"),
    log:
        "logs/alignment/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/alignment/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("alignment"),
        mem_mb=mem_mb("alignment"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "alignment": section_spec("alignment", "from_epoch"),
                "hessian": hessian_kwargs(),
                "setting": w.setting,
                "seed": int(w.seed),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("alignment")


rule wei2020_fig5:
    input:
        alignments=appendix_stores("alignment"),
        src=stage_sources("wei2020_fig5"),
    output:
        pdf=f"{FIGURES}/wei2020_fig5.pdf",
        json=f"{FIGURES}/wei2020_fig5.json",
        png=report(
            f"{FIGURES}/wei2020_fig5.png",
            caption="../report/wei2020_fig5.rst",
            category="Noise meets curvature",
        ),
    log:
        "logs/figures/wei2020_fig5.log",
    benchmark:
        "benchmarks/figures/wei2020_fig5.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig5"),
        mem_mb=mem_mb("wei2020_fig5"),
    params:
        kwargs=lambda w: as_json(
            {
                "figures": figure_options(),
                "from_epoch": config["alignment"]["from_epoch"],
            }
        ),
        io=lambda w, input, output: as_json(
            {"alignments": list(input.alignments), "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig5")


targets(lambda: appendix_targets("alignment", "wei2020_fig5"))
