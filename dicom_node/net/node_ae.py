"""The listener's AE: which callers it accepts, decided per association from the caller's address,
its calling and called AE titles and, over TLS, its client certificate. An unknown caller is
refused with A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised)
and the audit trail says why."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE

from ..config import Peer
from .patches.pynetdicom_settings import negotiating_association
from .tls import certificate_names, peer_certificate

#: No real AE title can contain a backslash, so this list matches no caller at all.
_NOBODY = ["\\"]


class NodeAE(AE):  # type: ignore[misc]
    """An AE that knows its callers and where streamed instances go.

    ``require_calling_aet`` is computed per association: pynetdicom negotiates in the
    association's own thread, so the caller's address is at hand and a peer with
    ``verify_host`` is only recognised from its configured host. An unknown caller is refused
    with A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised).
    """

    def __init__(self, ae_title: str, callers: list[Peer], reject_unknown: bool, incoming_dir: Path,
                 start_writeback: bool = False, other_titles: list[str] | None = None,
                 require_called: bool = False) -> None:
        super().__init__(ae_title=ae_title)
        #: The called AE titles this AE answers to (config node.ae_title and node.ae_titles).
        self.titles = {ae_title.strip(), *(t.strip() for t in other_titles or [])}
        self.require_called = require_called
        self.callers = callers
        self.reject_unknown = reject_unknown
        self.incoming_dir = incoming_dir
        #: Start writing each streamed file to disk while it arrives (store_messages): set when
        #: the store fsyncs every file anyway.
        self.start_writeback = start_writeback

    def allowed_titles(self, address: str, over_tls: bool = False, names: set[str] | None = None) -> list[str]:
        """Calling AE titles acceptable from ``address``; a ``tls`` peer's only over TLS with a
        client certificate that ``names`` it."""
        return [p.ae_title for p in self.callers
                if (not p.verify_host or p.host_matches(address))
                and (not p.tls or (over_tls and p.certificate_identity() in (names or set())))]

    def refusal(self, calling: str, address: str, over_tls: bool, names: set[str]) -> str:
        """Why ``calling`` is not accepted (for the log and the audit trail)."""
        claimed = [p for p in self.callers if p.ae_title == calling]
        if not claimed:
            return "calling AE title not recognised"
        if all(p.verify_host and not p.host_matches(address) for p in claimed):
            return "calling AE title not recognised from this address"
        tls_peers = [p for p in claimed if p.tls]
        if tls_peers and not over_tls:
            return f"peer {tls_peers[0].name} must connect over TLS"
        if tls_peers:
            shown = ", ".join(sorted(names)) or "no client certificate"
            return (f"the client certificate ({shown}) does not identify peer {tls_peers[0].name} "
                    f"(expected {tls_peers[0].certificate_identity()})")
        return "calling AE title not recognised"

    @property  # type: ignore[override]
    def require_called_aet(self) -> bool:
        """Read by pynetdicom while it negotiates, in the association's thread: the association
        takes the title it was called by (so the index records it and the A-ASSOCIATE-AC echoes
        it), unless titles are required and it is not one of ours (then pynetdicom's comparison
        with our own title fails and it rejects: called AE title not recognised)."""
        thread = negotiating_association()
        primitive = None if thread is None else thread.requestor.primitive
        if thread is None or primitive is None:
            return self.require_called
        called = str(primitive.called_ae_title).strip()
        if called in self.titles or not self.require_called:
            try:
                thread.acceptor.ae_title = called
            except ValueError:  # not a valid AE title to echo: answer with our own
                pass
        return self.require_called

    @require_called_aet.setter
    def require_called_aet(self, value: bool) -> None:
        self.require_called = bool(value)

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        if not self.reject_unknown:
            return []
        thread = negotiating_association()
        if thread is None:
            return self.allowed_titles("") or _NOBODY
        address = thread.requestor.address
        over_tls, certificate = peer_certificate(getattr(getattr(thread.dul, "socket", None), "socket", None))
        names = certificate_names(certificate)
        allowed = self.allowed_titles(address, over_tls, names)
        calling = str(thread.requestor.ae_title).strip()
        if calling not in allowed:  # pynetdicom rejects; on_rejected tells why
            thread.dicom_node_refusal = self.refusal(calling, address, over_tls, names)  # type: ignore[attr-defined]
        return allowed or _NOBODY
