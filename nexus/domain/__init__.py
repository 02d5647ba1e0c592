"""What the REST API, the controllers and the webhooks share: the rules of Nexus's own
resources.

``resources`` names the custom resources, labels, finalizers and phases; ``tenant`` and
``agent`` are typed views of NexusTenant / NexusAgent, the one builder of each body, the
reserved tenant names and the ``maxAgents`` rule; ``agentspec`` the rules of an astromesh/v1
Agent spec, and ``agentspec_schema`` the same rules as JSON Schema. Pure functions of
plain objects: nothing here does I/O.
"""
