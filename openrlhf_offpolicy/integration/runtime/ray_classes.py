"""Ray's ``@ray.remote`` classes seen from the patch table: which class Ray instantiates, and upstream's
method under it. Standard library only.
"""

RAY_HANDLE_API = ("options", "remote", "bind")  # methods of Ray's ActorClass handle itself (driver side)


def instantiated_class(owner):
    """The class Ray instantiates for a ``@ray.remote`` class, else ``owner`` itself.

    The module attribute of a ``@ray.remote`` class is Ray's ``ActorClass`` handle: a method set on
    it never reaches an actor. Ray exports (pickles) ``__ray_metadata__.modified_class``, a
    subclass of the user's class, when the first actor is created, and instantiates that.
    """
    metadata = getattr(owner, "__ray_metadata__", None)  # also through a wrapper that forwards attributes
    return getattr(metadata, "modified_class", owner)


def upstream_actor_method(instance, name: str):
    """Upstream's ``name`` for an instance of a ``@ray.remote`` class (the user class under Ray's subclass).

    A replacement of an actor method must be a module-level function: Ray exports the actor class by
    value (cloudpickle), and only a module-level function is pickled by reference, so that in the
    actor it runs with its module's own globals (the context variables the other wrappers read).
    It finds the method it stands for here, at call time, instead of in a closure.
    """
    cls = type(instance)
    return getattr(getattr(cls, "__ray_actor_class__", cls), name)
