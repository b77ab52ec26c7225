"""A deterministic stand-in for an LLM, for crewAI demos and tests (no network, no key)."""

from __future__ import annotations

import json
from typing import Any

from crewai.llms.base_llm import BaseLLM


class ScriptedLLM(BaseLLM):
    """Answers each call with the next of ``drafts`` as a crewAI final answer (the last repeats).

    ``received`` keeps what each call was sent, as JSON, so a test can check
    that the human's feedback reached the model.
    """

    drafts: list[str] = []
    received: list[str] = []

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        self.received.append(json.dumps(messages, default=str))
        draft = self.drafts.pop(0) if len(self.drafts) > 1 else self.drafts[0]
        return f"Thought: I now know the final answer\nFinal Answer: {draft}"

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 8192
