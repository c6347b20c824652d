"""The pieces of scripts/train_demo_model.py (the demo model's training recipe), one concern per module:

runner.py      runs a stage as a subprocess (the `qwen-audio-jax` command), logs
model_init.py  stage 2: the random-weight Qwen2-Audio model dir
evaluation.py  stage 5: held-out `generate` + scoring, and the held-out clips' digest
bundle.py      stage 6: the demo clips, run summaries, sizes
model_card.py  MODEL_CARD.md
"""
