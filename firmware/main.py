# Runs at boot on the board (and in host_sim, which imports it the same way).
from securenode import app

app.main()
