"""The embedded demo: a small Qwen2-Audio trained by this project's own commands, and held-out clips to ask it about.

from qwen_audio_jax.demo import run_demo, answer_audio
run_demo()                          # the bundled held-out clips: prompt, expected answer, answer, WER / accuracy
answer_audio("my.wav")              # "What sound is this?" about your own file
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "run_demo": "qwen_audio_jax.demo.run",
        "answer_audio": "qwen_audio_jax.demo.run",
        "DemoItem": "qwen_audio_jax.demo.bundle",
        "load_demo_items": "qwen_audio_jax.demo.bundle",
        "DEMO_MODEL": "qwen_audio_jax.demo.bundle",
        "DEMO_CLIPS": "qwen_audio_jax.demo.bundle",
        "score_answers": "qwen_audio_jax.demo.scoring",
    },
)
