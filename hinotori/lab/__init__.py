"""A lab of machines on one computer (network namespaces with sshd and a container engine)."""
