"""The pieces of scripts/make_demo_data.py (the demo corpus generator), one concern per module:

corpus.py     sample rate, clip length, vocabulary, speakers / timbres / noise types, the held-out cells
synthesis.py  espeak-ng speech, numpy sounds, noise, reverberation; `render` makes one clip (in a worker)
prompts.py    prompts in the reference styles, answers, plausible mistakes, SFT records, held-out requests
tokenizer.py  the corpus text and the byte-level BPE trained on it
"""
