"""Where policies come from: files and Kubernetes. Each feeds the PolicyRegistry."""
