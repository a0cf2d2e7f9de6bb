"""CTC models behind one interface (`interface.CTCModel`); importing the package registers every model type."""

from offline_kd.models import bilstm  # noqa: F401  (registers "bilstm")
from offline_kd.models import conformer  # noqa: F401  (registers "conformer")
