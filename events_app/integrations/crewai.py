"""crewAI adapter: tasks with ``human_input=True`` ask through humaninput, not the console.

crewAI (1.x) hands the human-feedback step of an agent's executor to the
provider set with ``crewai.core.providers.human_input.set_provider``. Ours
turns each round into a humaninput request: the prompt is the agent's draft
plus a question, the context is the task's description, ``crew_id``,
``task_id`` and ``agent_id`` come from the crew, and the execution id is the
one given, else crewAI's id of the running kickoff. The answer drives crewAI's
usual loop: an empty answer approves the draft; anything else goes back to
the agent as feedback (``_format_feedback_message`` + ``_invoke_loop``, as the
console provider does) and the next draft is asked about again.

Enable it in one line::

    from events_app.integrations.crewai import use_humaninput
    use_humaninput(base_url="http://127.0.0.1:8000", token="...")

or scoped: ``with humaninput_feedback(base_url=..., token=...): crew.kickoff()``.

Flows: ``@human_feedback`` methods ask through ``HumanInputFlowProvider``,
which ``use_humaninput`` also installs as crewAI's default flow provider
(``flow_config.hitl_provider``); or pass it per method with
``@human_feedback(message=..., provider=HumanInputFlowProvider(client))``.
It returns the answer to the flow (which then collapses it to an ``emit``
outcome with its LLM, if configured). crewAI's other route, raising
``HumanFeedbackPending`` and calling ``Flow.from_pending(...).resume(answer)``
later, needs the flow's state persisted in a process that outlives the
question; with a service that already stores the question and delivers the
answer, blocking in the flow (it runs the provider in a worker thread and
awaits our coroutine) is simpler and is what we ship.

crewAI is imported only here (install ``requirements-crewai.txt``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

from crewai.core.providers.human_input import (
    SyncHumanInputProvider,
    reset_provider,
    set_provider,
)
from crewai.execution import get_execution_uuid
from crewai.flow.flow_config import flow_config

from ..client import AskTimeout, HumanInputClient, HumanInputError, RequestCancelled, RequestExpired

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_QUESTION = (
    "Review the draft above. Answer with nothing (an empty answer) to approve it, "
    "or write what the agent should change."
)
NO_ANSWER = (AskTimeout, RequestExpired, RequestCancelled)


class HumanFeedbackUnavailable(HumanInputError):
    """Nobody answered (timeout, expiry or cancel) and ``on_timeout="fail"``."""


def _run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from sync code, even inside a running event loop.

    crewAI's executors may call the sync hook from a thread that already runs
    a loop; then the coroutine gets a loop of its own in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _identifier(thing: Any) -> str:
    value = getattr(thing, "id", None)
    return str(value) if value is not None else ""


class _AskOptions:
    """What both providers share: the client, the execution, the timeout and what it means."""

    def __init__(
        self,
        client: HumanInputClient,
        *,
        execution_id: str | None = None,
        timeout: float | None = None,
        on_timeout: Literal["fail", "proceed"] = "fail",
    ) -> None:
        if on_timeout not in ("fail", "proceed"):
            raise ValueError("on_timeout must be 'fail' or 'proceed'")
        self.client = client
        self.execution_id = execution_id
        self.timeout = timeout
        self.on_timeout = on_timeout

    def no_answer(self, error: Exception) -> None:
        """Nobody answered: return to proceed without feedback, or raise to fail."""
        if self.on_timeout == "fail":
            raise HumanFeedbackUnavailable(f"No human feedback: {error}") from error
        logger.warning("no human feedback (%s); proceeding without it", error)


class HumanInputServiceProvider(_AskOptions, SyncHumanInputProvider):
    """crewAI human-input provider that asks through a humaninput server."""

    def __init__(self, client: HumanInputClient, *, question: str = DEFAULT_QUESTION, **options: Any) -> None:
        super().__init__(client, **options)
        self.question = question

    # --- what is asked -------------------------------------------------------------

    def request_fields(self, answer: Any, context: Any) -> dict[str, Any]:
        """The humaninput request for one round of review of ``answer``."""
        crew, task, agent = context.crew, context.task, context.agent
        draft = self._get_output_string(answer)
        # crewAI binds one uuid per outermost kickoff: a crew run is an execution.
        execution_id = self.execution_id or get_execution_uuid() or f"crew-{_identifier(crew)}"
        metadata = {
            "source": "crewai",
            "agent_role": getattr(agent, "role", "") or "",
            "task_name": getattr(task, "name", "") or "",
            "crew_name": getattr(crew, "name", "") or "",
            "training": bool(context._is_training_mode()),
        }
        return {
            "execution_id": execution_id,
            "prompt": f"{draft}\n\n---\n{self.question}",
            "context": getattr(task, "description", "") or "",
            "crew_id": _identifier(crew),
            "task_id": _identifier(task),
            "agent_id": _identifier(agent),
            "metadata": {key: value for key, value in metadata.items() if value not in ("", None)},
        }

    async def ask_async(self, answer: Any, context: Any) -> str | None:
        """The human's feedback on ``answer``; None when nobody answered and we proceed."""
        fields = self.request_fields(answer, context)
        try:
            return await self.client.ask_async(
                fields.pop("execution_id"), fields.pop("prompt"), timeout=self.timeout, **fields
            )
        except NO_ANSWER as error:
            self.no_answer(error)
            return None

    # --- crewAI's hooks --------------------------------------------------------------

    def handle_feedback(self, formatted_answer: Any, context: Any) -> Any:
        """Called by crewAI when a ``human_input=True`` task has a draft (sync executors)."""
        answer = formatted_answer
        if context._is_training_mode():
            feedback = _run_blocking(self.ask_async(answer, context))
            if feedback is None:
                return answer
            return self._handle_training_feedback(answer, feedback, context)
        while context.ask_for_human_input:
            feedback = _run_blocking(self.ask_async(answer, context))
            if feedback is None or feedback.strip() == "":
                context.ask_for_human_input = False
                break
            context.messages.append(context._format_feedback_message(feedback))
            answer = context._invoke_loop()
        return answer

    async def handle_feedback_async(self, formatted_answer: Any, context: Any) -> Any:
        """Called by crewAI for async executors: the same loop without blocking the event loop."""
        answer = formatted_answer
        if context._is_training_mode():
            feedback = await self.ask_async(answer, context)
            if feedback is None:
                return answer
            return await self._handle_training_feedback_async(answer, feedback, context)
        while context.ask_for_human_input:
            feedback = await self.ask_async(answer, context)
            if feedback is None or feedback.strip() == "":
                context.ask_for_human_input = False
                break
            context.messages.append(context._format_feedback_message(feedback))
            answer = await context._ainvoke_loop()
        return answer


class HumanInputFlowProvider(_AskOptions):
    """crewAI Flow ``HumanFeedbackProvider``: ``@human_feedback`` asks through humaninput.

    ``request_feedback`` returns a coroutine; the flow awaits it on its own
    loop, so waiting for the human blocks nothing else.
    """

    def request_feedback(self, context: Any, flow: Any) -> Coroutine[Any, Any, str]:
        """Called by crewAI after a ``@human_feedback`` method returns."""
        return self._ask(context)

    async def _ask(self, context: Any) -> str:
        output = context.method_output
        if not isinstance(output, str):
            output = output.model_dump_json(indent=2) if hasattr(output, "model_dump_json") else repr(output)
        metadata = {
            "source": "crewai-flow",
            "flow_class": context.flow_class,
            "method_name": context.method_name,
            "emit": context.emit,
        }
        try:
            return await self.client.ask_async(
                self.execution_id or f"flow-{context.flow_id}",
                f"{context.message}\n\n{output}",
                context=f"{context.flow_class}.{context.method_name}",
                timeout=self.timeout,
                crew_id=str(context.flow_id),
                task_id=context.method_name,
                metadata={key: value for key, value in metadata.items() if value},
            )
        except NO_ANSWER as error:
            self.no_answer(error)
            return ""


def use_humaninput(
    base_url: str,
    token: str | None = None,
    *,
    execution_id: str | None = None,
    timeout: float | None = None,
    on_timeout: Literal["fail", "proceed"] = "fail",
    question: str = DEFAULT_QUESTION,
) -> Any:
    """Route crewAI's human input (tasks and flows) through humaninput; returns a reset token.

    Tasks: the provider is set in this context (a ``ContextVar``, so it follows
    this thread and the tasks it starts). Flows: it becomes the process-wide
    default ``flow_config.hitl_provider``.
    """
    client = HumanInputClient(base_url, token=token)
    options = {"execution_id": execution_id, "timeout": timeout, "on_timeout": on_timeout}
    flow_config.hitl_provider = HumanInputFlowProvider(client, **options)
    return set_provider(HumanInputServiceProvider(client, question=question, **options))


@contextlib.contextmanager
def humaninput_feedback(base_url: str, token: str | None = None, **options: Any) -> Iterator[None]:
    """``use_humaninput`` for the duration of a ``with`` block (both providers restored after)."""
    previous_flow_provider = flow_config.hitl_provider
    reset_token = use_humaninput(base_url, token, **options)
    try:
        yield
    finally:
        reset_provider(reset_token)
        flow_config.hitl_provider = previous_flow_provider
