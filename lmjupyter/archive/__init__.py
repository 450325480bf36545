"""Model archives: ``lmjupyter archive`` packs them, deploys open them, TorchServe's are imported.

    lmjupyter archive --model-name echo --version 1 --handler echo.py \\
        --config-file model-config.yaml --extra-files weights/ --archive-format tgz
    # then: POST /lmserve/api/models {"name": "echo", "archive": "echo.tar.gz", "wait": true}

:mod:`~lmjupyter.archive.pack` writes archives, :mod:`~lmjupyter.archive.unpack`
opens them safely for a deploy, :mod:`~lmjupyter.archive.torchserve` imports
``.mar`` files and :mod:`~lmjupyter.archive.requirements` installs an archive's
requirements per model when asked.
"""
