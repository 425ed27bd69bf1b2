"""One chat completion with the official OpenAI SDK: chat_once.py BASE_URL KEY MODEL.

Used by the operator e2e tests to show an unchanged SDK works through a gateway
in cluster mode.
"""

import sys

import openai

base_url, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}])
print(completion.choices[0].message.content)
