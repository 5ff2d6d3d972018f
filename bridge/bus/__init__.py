"""MQTT bus: CallEvents out to a broker, click-to-call commands between sites.

`bridge.bus.mqtt.MqttBus` is the entry point; `bridge.bus.sites.SiteRouter` says which site hosts an extension. This
package file imports nothing, so that `bridge.config` can use the pure site checks without loading aiomqtt.
"""
