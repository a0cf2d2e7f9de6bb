"""CTC models behind one interface (`interface.CTCModel`); importing the package registers every model type."""

from offline_kd.models import bilstm  # noqa: F401  (registers "bilstm")
from offline_kd.models import conformer  # noqa: F401  (registers "conformer")
from offline_kd.models import hf  # noqa: F401  (registers "hf"; transformers is imported when one is built)
