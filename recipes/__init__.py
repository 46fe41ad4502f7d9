"""Recipes: what runs a model, laid out so the folder shows the architecture.

    <model>/*.yaml          the recipes: one YAML per stage per model (+ pipeline.yaml), override-only
    run.py                  python -m recipes.run RECIPE        train one recipe (`make train`)
    pipeline.py             python -m recipes.pipeline SPEC     stages end to end (`make pipeline`)
    export.py, import_hf.py python -m recipes.export / import_hf   the serving layout out and in
    average.py, merge_ranks.py                                  derived checkpoints (weight averaging, rank merge)
    evaluate.py, generate.py, score.py                          held-out accuracy, decoding, logits
    cli.py                  one-line errors for every command
    engine/                 the training engine: recipe config, trainer, optimiser, step guard
    data/                   the data pipeline: corpus, tokenizer, packing, cache
    io/                     formats on disk: checkpoints, run directories, safetensors, the serving
                            layout (hf.py), and `load_model` for every tool that runs a model
    tools/                  developer tools: benchmarks, A/B, chaos, studies
"""
