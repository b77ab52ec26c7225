"""The operator's view of requests, the event log and issued tokens in Django's admin.

All three are view-only here: requests are created through the API and
their state belongs to the service layer, the log is append-only, and tokens
are minted by the API. The admin's writes are answering or cancelling a
pending request and revoking tokens, through ``services`` like every other
transport, so an answer's event is logged and published to subscribers
exactly as if an agent's client had sent it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator
from django.utils.timesince import timesince
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from . import services
from .exceptions import AlreadyResolved, HumanInputError
from .models import HumanInputEvent, HumanInputRequest, RequestStatus, ScopedToken


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON in a ``<pre>``; the JSON text is escaped, never marked safe."""
    return format_html(
        '<pre class="humaninput-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False)
    )


def search_uuid(search_term: str) -> uuid.UUID | None:
    """The UUID an operator pasted into the search box, if the whole query is one."""
    try:
        return uuid.UUID(search_term.strip())
    except ValueError:
        return None


def responder(request: HttpRequest) -> str:
    """The ``responded_by`` of an answer or cancel made in the admin."""
    return f"user:{request.user.get_username()}"


def principal_link(admin_site: admin.AdminSite, name: str) -> str:
    """Who did it (``responded_by``, ``issued_by``): a scoped token links to its record."""
    kind, _, token_id = name.partition(":")
    if kind != "token" or not token_id:
        return name
    url = reverse(f"{admin_site.name}:events_app_scopedtoken_change", args=(quote(token_id),))
    return format_html('<a href="{}">{}</a>', url, name)


class ExecutionListFilter(admin.SimpleListFilter):
    """Filter by execution, offering the ones that still wait for a human, then the newest.

    Execution ids are unbounded, so a plain ``list_filter`` on the field would
    list every execution ever seen. Both lookups stay cheap on a large table:
    pending requests are few, and the recent executions come from the newest
    ``max_choices * 10`` requests (the ``created_at`` index). Any execution can
    still be filtered through the URL; the execution column links to it.
    """

    title = "execution"
    parameter_name = "execution_id"
    max_choices = 20

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Called when the changelist renders: pending executions (most recently asked first), then recent."""
        pending = (
            HumanInputRequest.objects.filter(status=RequestStatus.PENDING)
            .order_by()
            .values("execution_id")
            .annotate(waiting=Count("pk"), latest=Max("created_at"))
            .order_by("-latest")[: self.max_choices]
        )
        choices = {
            row["execution_id"]: f"{row['execution_id']} ({row['waiting']} pending)" for row in pending
        }
        recent = HumanInputRequest.objects.order_by("-created_at").values_list("execution_id", flat=True)
        for execution_id in recent[: self.max_choices * 10]:
            if len(choices) >= self.max_choices:
                break
            choices.setdefault(execution_id, execution_id)
        selected = self.value()
        if selected and selected not in choices:
            choices[selected] = selected
        return list(choices.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(execution_id=self.value())
        return queryset


class ViewOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete through the admin's own forms.

    Requests are created through the API (a request made here would have no
    agent waiting for its answer); their state changes only through the
    service layer, which also writes and publishes the event; and deleting a
    request would cut its events out of the execution's log, leaving a gap
    that subscribers replaying the log cannot tell from a lost event.
    """

    show_full_result_count = False  # one COUNT(*) less over a table that only grows

    def uuid_matches(self, queryset: QuerySet, value: uuid.UUID) -> QuerySet:
        """Rows an operator means by pasting the UUID ``value`` (text search misses UUID columns)."""
        return queryset.none()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Called for the search box: text search, plus ``uuid_matches`` when the query is a UUID."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        value = search_uuid(search_term)
        if value is not None:
            results |= self.uuid_matches(queryset, value)
        return results, may_have_duplicates

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class HumanInputEventInline(admin.TabularInline):
    """A request's events, in log order, read-only."""

    model = HumanInputEvent
    verbose_name_plural = "events"
    fields = ("sequence", "type", "created_at", "payload_json")
    readonly_fields = fields
    ordering = ("sequence",)
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="payload")
    def payload_json(self, event: HumanInputEvent) -> str:
        return pretty_json(event.payload)


class AnswerForm(forms.Form):
    """The answer box of a pending request's page; its textarea belongs to the page's separate answer form."""

    response = forms.CharField(
        label="Answer", widget=forms.Textarea(attrs={"rows": 4, "cols": 80, "form": "humaninput-answer-form"})
    )


@admin.register(HumanInputRequest)
class HumanInputRequestAdmin(ViewOnlyAdmin):
    list_display = (
        "short_prompt",
        "execution",
        "status",
        "created_at",
        "age",
        "expires_at",
        "answered_by",
        "responded_at",
    )
    list_filter = ("status", ExecutionListFilter, "created_at")
    date_hierarchy = "created_at"
    search_fields = ("prompt", "context", "execution_id")
    search_help_text = "Prompt, context or execution id. A request id (UUID) finds that request."
    ordering = ("-created_at",)
    actions = ("cancel_selected",)
    inlines = (HumanInputEventInline,)
    fieldsets = (
        (None, {"fields": ("id", "execution_id", "status", "prompt", "context", "reason_flags_json")}),
        ("Answer", {"fields": ("response", "answered_by", "responded_at")}),
        ("Timing", {"fields": ("created_at", "age", "expires_at")}),
        ("Origin", {"fields": ("crew_id", "task_id", "agent_id", "metadata_json"), "classes": ("collapse",)}),
    )
    readonly_fields = ("age", "reason_flags_json", "metadata_json", "answered_by")

    # --- columns and fields ---------------------------------------------------

    @admin.display(description="responded by", ordering="responded_by")
    def answered_by(self, obj: HumanInputRequest) -> str:
        """Who answered or cancelled: ``api-key``, ``user:<name>`` or ``token:<id>`` (linked)."""
        return principal_link(self.admin_site, obj.responded_by)

    @admin.display(description="prompt", ordering="prompt")
    def short_prompt(self, obj: HumanInputRequest) -> str:
        return Truncator(obj.prompt).chars(80)

    @admin.display(description="execution", ordering="execution_id")
    def execution(self, obj: HumanInputRequest) -> str:
        changelist = reverse(f"{self.admin_site.name}:events_app_humaninputrequest_changelist")
        query = urlencode({ExecutionListFilter.parameter_name: obj.execution_id})
        return format_html('<a href="{}?{}">{}</a>', changelist, query, obj.execution_id)

    @admin.display(description="age", ordering="-created_at")
    def age(self, obj: HumanInputRequest) -> str:
        return timesince(obj.created_at, timezone.now())

    @admin.display(description="reason flags")
    def reason_flags_json(self, obj: HumanInputRequest) -> str:
        return pretty_json(obj.reason_flags)

    @admin.display(description="metadata")
    def metadata_json(self, obj: HumanInputRequest) -> str:
        return pretty_json(obj.metadata)

    def uuid_matches(self, queryset: QuerySet, value: uuid.UUID) -> QuerySet:
        """The request itself."""
        return queryset.filter(pk=value)

    # --- answering and cancelling -----------------------------------------------

    def has_answer_permission(self, request: HttpRequest, obj: HumanInputRequest | None = None) -> bool:
        """Answering and cancelling need the model's change permission (no field is editable)."""
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "<path:object_id>/answer/",
                self.admin_site.admin_view(require_POST(self.answer_view)),
                name="{}_{}_answer".format(*info),
            ),
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(require_POST(self.cancel_view)),
                name="{}_{}_cancel".format(*info),
            ),
        ]
        return own + super().get_urls()  # before admin's catch-all "<path:object_id>/"

    def _url(self, request: HttpRequest, name: str, obj: HumanInputRequest) -> str:
        url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=(quote(obj.pk),),
        )
        preserved = {"preserved_filters": self.get_preserved_filters(request), "opts": self.opts}
        return add_preserved_filters(preserved, url)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: HumanInputRequest | None = None,
    ) -> HttpResponse:
        """Called to render the request page: add the answer form while the request is pending."""
        if obj is not None and obj.is_pending and self.has_answer_permission(request, obj):
            context["humaninput_answer_form"] = AnswerForm()
            context["humaninput_answer_url"] = self._url(request, "answer", obj)
            context["humaninput_cancel_url"] = self._url(request, "cancel", obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _answerable_or_redirect(
        self, request: HttpRequest, object_id: str
    ) -> tuple[HumanInputRequest | None, HttpResponse | None]:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return None, self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_answer_permission(request, obj):
            raise PermissionDenied
        return obj, None

    def answer_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST only: record the form's answer through ``services.request_respond``."""
        obj, redirect = self._answerable_or_redirect(request, object_id)
        if redirect is not None:
            return redirect
        form = AnswerForm(request.POST)
        if not form.is_valid():
            self.message_user(request, "Write an answer before sending it.", messages.ERROR)
            return HttpResponseRedirect(self._url(request, "change", obj))
        try:
            answered = services.request_respond(
                request_id=obj.pk, response=form.cleaned_data["response"], responded_by=responder(request)
            )
        except AlreadyResolved as error:
            self.message_user(request, f"{error.detail} Your answer was not recorded.", messages.ERROR)
        except HumanInputError as error:
            self.message_user(request, error.detail, messages.ERROR)
        else:
            self.log_change(request, answered, "Answered.")
            self.message_user(request, f"Answered “{answered}”.", messages.SUCCESS)
        return HttpResponseRedirect(self._url(request, "change", obj))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST only: withdraw the request through ``services.request_cancel``."""
        obj, redirect = self._answerable_or_redirect(request, object_id)
        if redirect is not None:
            return redirect
        try:
            cancelled = services.request_cancel(request_id=obj.pk, cancelled_by=responder(request))
        except HumanInputError as error:
            self.message_user(request, f"{error.detail} Nothing was cancelled.", messages.ERROR)
        else:
            self.log_change(request, cancelled, "Cancelled.")
            self.message_user(request, f"Cancelled “{cancelled}”.", messages.SUCCESS)
        return HttpResponseRedirect(self._url(request, "change", obj))

    @admin.action(description="Cancel selected pending requests", permissions=["answer"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Cancel each selected request that is still pending; the others are counted, not touched."""
        cancelled = not_pending = 0
        for request_id in list(queryset.values_list("pk", flat=True)):
            try:
                obj = services.request_cancel(request_id=request_id, cancelled_by=responder(request))
            except HumanInputError:
                not_pending += 1
            else:
                cancelled += 1
                self.log_change(request, obj, "Cancelled.")
        parts = [ngettext("Cancelled %d request.", "Cancelled %d requests.", cancelled) % cancelled]
        if not_pending:
            parts.append(
                ngettext("%d was no longer pending.", "%d were no longer pending.", not_pending) % not_pending
            )
        level = messages.SUCCESS if cancelled and not not_pending else messages.WARNING
        self.message_user(request, " ".join(parts), level)


@admin.register(HumanInputEvent)
class HumanInputEventAdmin(ViewOnlyAdmin):
    list_display = ("execution_id", "sequence", "type", "request_link", "created_at")
    list_filter = ("type", ExecutionListFilter, "created_at")
    list_select_related = ("request",)
    date_hierarchy = "created_at"
    search_fields = ("execution_id",)
    search_help_text = "Execution id, or an event id or request id (UUID)."
    ordering = ("-created_at", "-sequence")
    fields = ("event_id", "execution_id", "sequence", "type", "request_link", "created_at", "payload_json")
    readonly_fields = ("request_link", "payload_json")

    @admin.display(description="request", ordering="request__created_at")
    def request_link(self, obj: HumanInputEvent) -> str:
        url = reverse(
            f"{self.admin_site.name}:events_app_humaninputrequest_change", args=(quote(obj.request_id),)
        )
        return format_html('<a href="{}">{}</a>', url, Truncator(obj.request.prompt).chars(60))

    @admin.display(description="payload")
    def payload_json(self, obj: HumanInputEvent) -> str:
        return pretty_json(obj.payload)

    def uuid_matches(self, queryset: QuerySet, value: uuid.UUID) -> QuerySet:
        """The event itself, or every event of the request with that id."""
        return queryset.filter(pk=value) | queryset.filter(request_id=value)


@admin.register(ScopedToken)
class ScopedTokenAdmin(ViewOnlyAdmin):
    """Tokens minted by ``POST /api/tokens``: who issued them, and revoking them."""

    list_display = ("token_id", "execution_id", "scope", "issued_by", "issued_at", "expires_at", "revoked_at")
    list_filter = ("scope", ("revoked_at", admin.EmptyFieldListFilter), "issued_at")
    date_hierarchy = "issued_at"
    search_fields = ("=token_id", "execution_id")
    search_help_text = "Token id (as in responded_by, without token:) or execution id."
    ordering = ("-issued_at",)
    actions = ("revoke_selected",)
    fields = (
        "token_id",
        "execution_id",
        "scope",
        "issued_by",
        "issued_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
    )

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Revoking needs the model's change permission (no field is editable)."""
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Revoke each selected token through ``services.token_revoke``; revoked ones stay as they were."""
        revoked = 0
        for token_id in list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True)):
            record = services.token_revoke(token_id=token_id, revoked_by=responder(request))
            self.log_change(request, record, "Revoked.")
            revoked += 1
        self.message_user(
            request, ngettext("Revoked %d token.", "Revoked %d tokens.", revoked) % revoked, messages.SUCCESS
        )
