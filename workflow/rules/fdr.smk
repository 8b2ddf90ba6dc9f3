"""W&S Fig 6 (A.5): the fluctuation-dissipation criterion in the raw space and the top-k
Hessian eigenspaces along trajectories -> results/<setting>/seed<k>/fdr.zarr, and the figure
results/figures/wei2020_fig6.pdf (+ .png, + the claim .json).
"""


rule fdr:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("fdr"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/fdr.zarr"),
    log:
        "logs/fdr/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/fdr/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("fdr"),
        mem_mb=mem_mb("fdr"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "fdr": section_spec("fdr", "threshold", "n_samples"),
                "hessian": section_hessian("fdr"),
                "setting": w.setting,
                "seed": int(w.seed),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("fdr")


rule wei2020_fig6:
    input:
        fdrs=appendix_stores("fdr"),
        src=stage_sources("wei2020_fig6"),
    output:
        pdf=f"{FIGURES}/wei2020_fig6.pdf",
        json=f"{FIGURES}/wei2020_fig6.json",
        png=report(
            f"{FIGURES}/wei2020_fig6.png",
            caption="../report/wei2020_fig6.rst",
            category="Noise meets curvature",
        ),
    log:
        "logs/figures/wei2020_fig6.log",
    benchmark:
        "benchmarks/figures/wei2020_fig6.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig6"),
        mem_mb=mem_mb("wei2020_fig6"),
    params:
        kwargs=lambda w: as_json(
            {"figures": figure_options(), "threshold": config["fdr"]["threshold"]}
        ),
        io=lambda w, input, output: as_json(
            {"fdrs": list(input.fdrs), "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig6")


targets(lambda: appendix_targets("fdr", "wei2020_fig6"))
