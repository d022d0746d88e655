"""Switchyard: the plugin author's whole API.

Everything a plugin needs is exported here; every other module may change without notice.
"""

from gateway.accounting import UsageRecord
from gateway.backend import BackendContext, BaseBackend
from gateway.config import BackendConfig, EnergyProfile, Pricing, Timeouts
from gateway.errors import (
    AuthenticationFailed,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BudgetExceeded,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    SwitchyardError,
)
from gateway.hookspecs import hookimpl
from gateway.interfaces import (
    Backend,
    BackendCall,
    BackendLoad,
    BackendResult,
    BackendStats,
    Candidate,
    Constraints,
    Endpoint,
    Meter,
    Plan,
    PlanEditor,
    Prediction,
    RequestFeatures,
    RoutingPolicy,
    Usage,
)
from gateway.predict import PredictOptions, estimate, evaluate
from gateway.protocol import has_content
from gateway.state import (
    KeyRecord,
    Limit,
    Reserved,
    Settled,
    Spend,
    StateStore,
    StateUnavailable,
    Team,
)

__all__ = [
    "AuthenticationFailed",
    "Backend",
    "BackendCall",
    "BackendConfig",
    "BackendContext",
    "BackendError",
    "BackendLoad",
    "BackendResult",
    "BackendStats",
    "BackendTimeout",
    "BackendUnavailable",
    "BaseBackend",
    "BudgetExceeded",
    "Candidate",
    "Constraints",
    "Endpoint",
    "EnergyProfile",
    "InvalidRequest",
    "KeyRecord",
    "Limit",
    "Meter",
    "ModelNotFound",
    "Overloaded",
    "PermissionDenied",
    "Plan",
    "PlanEditor",
    "PredictOptions",
    "Prediction",
    "Pricing",
    "RateLimited",
    "RequestFeatures",
    "Reserved",
    "RoutingPolicy",
    "ServiceUnavailable",
    "Settled",
    "Spend",
    "StateStore",
    "StateUnavailable",
    "SwitchyardError",
    "Team",
    "Timeouts",
    "Usage",
    "UsageRecord",
    "estimate",
    "evaluate",
    "has_content",
    "hookimpl",
]
