"""Claims table -> results/claims.csv: every paper figure's claim, numbers and verdict (the
figure stages write results/figures/<id>.json beside <id>.pdf)."""


rule claims:
    input:
        claims=lambda w: claim_files(),
        src=stage_sources("claims"),
    output:
        report(
            f"{RESULTS}/claims.csv",
            caption="../report/claims.rst",
            category="0 Claims",
        ),
    log:
        "logs/claims.log",
    benchmark:
        "benchmarks/claims.tsv"
    threads: 1
    resources:
        runtime=runtime("claims"),
        mem_mb=mem_mb("claims"),
    params:
        kwargs=lambda w: as_json({}),
        io=lambda w, input, output: as_json(
            {"claims": list(input.claims), "output": output[0]}
        ),
    shell:
        hessvalley("claims")
