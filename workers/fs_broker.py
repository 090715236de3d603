"""kombu's file-system transport, with messages that appear in the queue folder only when complete.

kombu creates a message file under its final name and then writes into it. A consumer polling
the folder can take the file in between and read an empty message (its worker then dies on a
JSON error). Here a message is written under a name no consumer matches and renamed into place;
a rename within one folder is atomic. Everything else is kombu's.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, virtual
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "workers.fs_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"  # zero-padded: sorts in order
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # consumers match "<queue>.msg" exactly: this name is invisible
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    # One state for every connection of the process, as in kombu's transport (not shared with it).
    global_state = virtual.BrokerState()
