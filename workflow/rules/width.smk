"""Sagun et al. 2017 §3.2, Figs 4-6: the spectrum's edges against width, from the exact
spectra of a width family -> results/figures/sagun2017_width.pdf (+ .png, + the claim .json).
"""


rule sagun2017_width:
    input:
        spectra=lambda w: family_stores("width", "spectrum"),
        src=stage_sources("sagun2017_width"),
    output:
        pdf=f"{FIGURES}/sagun2017_width.pdf",
        json=f"{FIGURES}/sagun2017_width.json",
        png=report(
            f"{FIGURES}/sagun2017_width.png",
            caption="../report/sagun2017_width.rst",
            category="Bulk and outliers",
        ),
    log:
        "logs/figures/sagun2017_width.log",
    benchmark:
        "benchmarks/figures/sagun2017_width.tsv"
    threads: 1
    resources:
        runtime=runtime("sagun2017_width"),
        mem_mb=mem_mb("sagun2017_width"),
    params:
        kwargs=lambda w: as_json(
            {"figures": figure_options(), "width": section_spec("width")}
        ),
        io=lambda w, input, output: as_json(
            {"spectra": list(input.spectra), "output": output.pdf}
        ),
    shell:
        hessvalley("sagun2017_width")


targets(lambda: section_targets("width", "sagun2017_width"))
