"""Training scripts of the built-in ``world`` model, in the order they run.

1. ``vae``: the causal video VAE on world clips.
2. ``teacher``: the image-to-video DiT with flow matching (many-step teacher; also text-to-video
   when the image is dropped).
3. ``t2i``: the text-to-image model that makes first frames.
4. ``dmd2``: step distillation of the teacher into 4- and 8-step students (DMD2).
5. ``export``: the diffusers-format folder shipped in ``resources/world``.

Each runs alone or under ``torchrun``; each resumes from its run folder's latest checkpoint.
"""

from ..quant import import_torchao_quietly

# Every stage imports diffusers, which imports torchao: do it first, quietly (no "Failed to load"
# lines on CPU builds at the top of every training log).
import_torchao_quietly()
