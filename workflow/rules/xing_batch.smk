"""Xing et al. 2018 §4.2 (Figs 5-7): the alignment of mini-batch gradients with the Hessian
against the batch size -> results/<setting>/seed<k>/minibatch_alignment.zarr and
results/figures/xing2018_fig5.pdf; the cosine of consecutive mini-batch gradients over a
batch family -> results/figures/xing2018_fig7.pdf (each + .png, + the claim .json).
"""


rule minibatch_alignment:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("minibatch_alignment"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/minibatch_alignment.zarr"),
    log:
        "logs/minibatch_alignment/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/minibatch_alignment/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("minibatch_alignment"),
        mem_mb=mem_mb("minibatch_alignment"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "section": section_spec("minibatch_alignment", "n_samples"),
                "hessian": section_hessian("minibatch_alignment"),
                "reference": {
                    "trace": config["curvature"]["trace"],
                    "eigen": {
                        key: config["curvature"]["eigen"][key]
                        for key in ("tol", "max_dim", "block_size", "seed")
                    },
                },
                "setting": w.setting,
                "seed": int(w.seed),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("minibatch_alignment")


rule xing2018_fig5:
    input:
        alignments=appendix_stores("minibatch_alignment"),
        src=stage_sources("xing2018_fig5"),
    output:
        pdf=f"{FIGURES}/xing2018_fig5.pdf",
        json=f"{FIGURES}/xing2018_fig5.json",
        png=report(
            f"{FIGURES}/xing2018_fig5.png",
            caption="../report/xing2018_fig5.rst",
            category="Noise meets curvature",
        ),
    log:
        "logs/figures/xing2018_fig5.log",
    benchmark:
        "benchmarks/figures/xing2018_fig5.tsv"
    threads: 1
    resources:
        runtime=runtime("xing2018_fig5"),
        mem_mb=mem_mb("xing2018_fig5"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {"alignments": list(input.alignments), "output": output.pdf}
        ),
    shell:
        hessvalley("xing2018_fig5")


rule xing2018_fig7:
    input:
        trajectories=[
            trajectory_path(setting, seed)
            for setting in config["gradient_cosine"]["runs"]
            for seed in run_spec(setting)["seeds"]
        ],
        src=stage_sources("xing2018_fig7"),
    output:
        pdf=f"{FIGURES}/xing2018_fig7.pdf",
        json=f"{FIGURES}/xing2018_fig7.json",
        png=report(
            f"{FIGURES}/xing2018_fig7.png",
            caption="../report/xing2018_fig7.rst",
            category="Noise meets curvature",
        ),
    log:
        "logs/figures/xing2018_fig7.log",
    benchmark:
        "benchmarks/figures/xing2018_fig7.tsv"
    threads: 1
    resources:
        runtime=runtime("xing2018_fig7"),
        mem_mb=mem_mb("xing2018_fig7"),
    params:
        kwargs=lambda w: as_json(
            {
                "figures": figure_options(),
                "gradient_cosine": section_spec("gradient_cosine"),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectories": list(input.trajectories), "output": output.pdf}
        ),
    shell:
        hessvalley("xing2018_fig7")


targets(lambda: appendix_targets("minibatch_alignment", "xing2018_fig5"))
targets(lambda: appendix_targets("gradient_cosine", "xing2018_fig7"))
