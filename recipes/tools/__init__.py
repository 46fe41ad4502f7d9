"""Developer tools: `make bench` (bench.py), interleaved A/B of recipe variants (bench_ab.py), one MoE
layer's implementations (bench_moe.py), kill-and-resume chaos (chaos.py, `make chaos`), and the DSSN
stability study (study_dssn.py)."""
