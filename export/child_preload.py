"""What the export's isolation forkserver imports once, before it forks any child: the libraries children use.

Imported only by that server process (`kerasport.isolation.preload`), never by kerasport itself. Importing
TensorFlow does not start the threads its first operation does, so forking after the import is safe, and each
child starts warm.
"""

from kerasport.tfenv import quiet_tensorflow

quiet_tensorflow()

import tensorflow  # noqa: E402, F401
import tf2onnx  # noqa: E402, F401
