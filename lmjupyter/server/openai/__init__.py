"""OpenAI's API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) over the built-in causal-LM handler.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8765/v1", api_key=TOKEN)   # Jupyter: <url>lmserve/v1, its token
    client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], stream=True)

``routes`` (Tornado mixins, in the one route table), ``translate`` (OpenAI parameters to
native requests), ``shapes`` (answers and SSE chunks), ``errors`` (OpenAI's error shape),
``tokens`` (token strings for logprobs).
"""
