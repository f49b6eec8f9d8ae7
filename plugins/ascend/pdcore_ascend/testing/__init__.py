"""CPU stand-ins for torch_npu, so the Ascend code paths run where no NPU is.

``fake_torch_npu``: the torch_npu operators pdcore calls, checked like the real
ones and computed with torch. ``npu_host``: installs that module plus a
``torch.npu`` namespace into a process (tests, or server processes started with
the ``sitecustomize`` of a test). Nothing here is imported by the plugin itself.
"""
