"""Video: decoding and encoding clips, optical flow between input frames, backward warping, the
reliability of the flow (Ruder, Dosovitskiy & Brox, GCPR 2016 / IJCV 2018), the warping error of
Lai et al. (ECCV 2018) and a sample clip with ground-truth flow. The run over a clip's frames is
nstexp.run.video's."""
