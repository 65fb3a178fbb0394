"""The API's routers, one per resource: images, segment, jobs, model, health."""
