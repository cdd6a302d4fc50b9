"""Speed and memory: TGCNet beside its floor, its lower bound, CLIPSeg and a U-Net (``run``), and the
exported ONNX file beside PyTorch (``onnx_speed``), both timed by interleaving what they compare.
"""
