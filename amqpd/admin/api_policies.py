"""Policies over HTTP: ``/api/policies[/{vhost}[/{name}]]`` with RabbitMQ 3.10's answers.

Who may do what (as 3.10 answered): any management user lists the policies of the vhosts
it may see (``GET /api/policies`` gives ``[]`` when it sees none; ``/{vhost}`` without
access is 401 ``User not authorised to access virtual host``); reading, setting and
deleting one policy needs the ``policymaker`` or ``administrator`` tag *and* access to the
vhost, else 401 ``User not authorised to access object``. PUT answers 201 (new) or 204
(replaced), DELETE 204; a missing policy is 404, a PUT into a missing vhost is 404
``{"error": "not_found", "reason": "vhost_not_found"}``, an invalid policy 400 with
RabbitMQ's ``Validation failed`` reason (:mod:`amqpd.config.policy`).
"""

from __future__ import annotations

from amqpd.access.permissions import permission_of
from amqpd.admin.context import NO_CONTENT, Call, Reply, created_or_updated
from amqpd.admin.errors import ApiError, bad_request, not_authorised, not_found
from amqpd.admin.routes import Route, route
from amqpd.broker.policies import PolicyError, make_policy
from amqpd.broker.vhost import VirtualHost

POLICY_TAGS = frozenset({"policymaker", "administrator"})


def list_policies(call: Call) -> Reply:
    """GET /api/policies[/{vhost}]."""
    return Reply(body=[policy.document(vhost.name) for vhost in call.vhosts()
                       for policy in vhost.policies])


def _policy_vhost(call: Call, missing: ApiError) -> VirtualHost:
    vhost = call.state.broker.vhosts.get(call.vhost_name)
    if vhost is None:
        raise missing
    if POLICY_TAGS.isdisjoint(call.user.tags) or permission_of(call.user, vhost.name) is None:
        raise not_authorised("User not authorised to access object")
    return vhost


def get_policy(call: Call) -> Reply:
    """GET /api/policies/{vhost}/{name}."""
    vhost = _policy_vhost(call, not_found())
    policy = vhost.policies.get(call.params["name"])
    if policy is None:
        raise not_found()
    return Reply(body=policy.document(vhost.name))


def put_policy(call: Call) -> Reply:
    """PUT /api/policies/{vhost}/{name}: create or replace, then re-apply at once."""
    vhost = _policy_vhost(call, ApiError(404, "not_found", "vhost_not_found"))
    body = call.json_object()
    for key in ("pattern", "definition"):
        if key not in body:
            raise bad_request(f"[{{key_missing,{key}}}]")
    try:
        policy = make_policy(call.params["name"], body["pattern"], body["definition"],
                             body.get("apply-to", "all"), body.get("priority", 0))
    except PolicyError as exc:
        raise bad_request(exc.reason) from None
    return created_or_updated(vhost.policies.put(policy))


def delete_policy(call: Call) -> Reply:
    """DELETE /api/policies/{vhost}/{name}."""
    vhost = _policy_vhost(call, not_found())
    if not vhost.policies.delete(call.params["name"]):
        raise not_found()
    return Reply(NO_CONTENT)


ROUTES: list[Route] = [
    route("GET", "api/policies", list_policies),
    route("GET", "api/policies/{vhost}", list_policies),
    route("GET", "api/policies/{vhost}/{name}", get_policy),
    route("PUT", "api/policies/{vhost}/{name}", put_policy),
    route("DELETE", "api/policies/{vhost}/{name}", delete_policy),
]
