"""Claims table -> results/claims.csv: every paper figure's claim, numbers and verdict (the
figure stages write results/figures/<id>.json beside <id>.pdf)."""


rule claims:
    input:
        claims=lambda w: claim_files(),
        src=stage_sources("claims"),
    output:
        csv=report(
            f"{RESULTS}/claims.csv",
            caption="../report/claims.rst",
            category="0 Claims",
        ),
        table=f"{RESULTS}/claims.rst",
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
            {"claims": list(input.claims), "output": output.csv, "table": output.table}
        ),
    shell:
        hessvalley("claims")
