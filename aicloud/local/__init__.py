"""The local platform: servers from wheels and the seven services, supervised as processes."""
