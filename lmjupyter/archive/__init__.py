"""Model archives: ``lmjupyter archive`` packs them, deploys open them, TorchServe's ``.mar`` too.

    lmjupyter archive --model-name echo --version 1 --handler echo.py \\
        --config-file model-config.yaml --extra-files weights/ --archive-format tgz
    # then: POST /lmserve/api/models {"name": "echo", "archive": "echo.tar.gz", "wait": true}

:mod:`~lmjupyter.archive.pack` writes archives, :mod:`~lmjupyter.archive.unpack`
opens them safely for a deploy (TorchServe's ``.mar`` files through
:mod:`lmjupyter.compat.torchserve.archive`) and :mod:`~lmjupyter.archive.requirements`
installs an archive's requirements per model when asked.
"""
